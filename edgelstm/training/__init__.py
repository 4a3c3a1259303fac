"""Datasets (UEA ``.ts``, FSDD, ``.npz``) and the training loop behind ``edgelstm train``."""
