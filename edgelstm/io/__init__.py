"""Files in and out: native checkpoints (``load``/``save``) and atomic writes."""
