"""Which inputs and outputs of an ONNX graph carry its recurrent state, by name.

Shared by streaming (feeding states back chunk to chunk) and quantize (zero
states in generated comparison inputs), so it lives with the ONNX converters.
"""

from __future__ import annotations

from edgelstm.errors import ConfigError

__all__ = ["state_pairs"]


def state_pairs(inputs: list[str], outputs: list[str],
                explicit: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """``[(state input, state output), ...]`` of a graph, hidden state first.

    Without ``explicit`` an input ``n`` pairs with the output ``n_n``, ``nn``,
    ``nN``, ``n_out`` or ``n_new`` (a trailing ``0`` of ``n`` dropped first:
    ``h0`` -> ``h_n``). ``h``-like names come before ``c``-like ones.
    """
    if explicit:
        for i, o in explicit.items():
            if i not in inputs:
                raise ConfigError(f"--state {i}={o}: the graph has no input {i!r} "
                                  f"(inputs: {', '.join(inputs)})")
            if o not in outputs:
                raise ConfigError(f"--state {i}={o}: the graph has no output {o!r} "
                                  f"(outputs: {', '.join(outputs)})")
        return list(explicit.items())
    pairs = []
    for name in inputs:
        base = name[:-1] if name.endswith("0") and len(name) > 1 else name
        for cand in (f"{base}_n", f"{base}n", f"{base}N", f"{base}_out", f"{base}_new",
                     f"{name}_n", f"{name}N"):
            if cand in outputs and cand != name:
                pairs.append((name, cand))
                break
    order = {"h": 0, "c": 1}
    return sorted(pairs, key=lambda p: order.get(p[0][:1].lower(), 2))
