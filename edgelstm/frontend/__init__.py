"""Signals to frames: audio/sensor readers, resampling, log-mel and MFCC features."""
