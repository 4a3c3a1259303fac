"""The math and the modules: functional recurrences, activations, layers, the sequence model.

Imports only ``edgelstm.fast`` (kernel dispatch) and ``edgelstm.errors``; saving and
loading live in ``edgelstm.io``.
"""
