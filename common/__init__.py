"""What producer and worker share: settings, keys, codec, models, events, scripts, errors."""
