"""``edgelstm info``: describe a model."""

from __future__ import annotations

import json

import click

from edgelstm.cli._common import handle_errors


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_io(items) -> str:
    return ", ".join(f"{i['name']} {tuple(i['shape'])}".replace("'", "") for i in items)


def _print_rows(rows) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _environment(as_json: bool) -> None:
    from edgelstm.runtime.info import environment

    env = environment()
    if as_json:
        click.echo(json.dumps(env, indent=2, sort_keys=True))
        return
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    _print_rows([("edgelstm", env["edgelstm"]), ("python", env["python"]),
                 ("platform", f"{env['platform']}, {env['cpu_count']} CPUs"),
                 ("versions", versions), ("default device", env["default_device"]),
                 ("gpu", "available" if env["gpu_available"] else "none"),
                 ("kernels", env["kernels"]), ("kernel threads", env["kernel_threads"]),
                 ("mlx blas", env["mlx_blas"]),
                 ("placement", env["placement"])])


def _lifted_cells(path) -> list[str]:
    """Hand-written LSTM/GRU cells that run as fused nodes (MLX backend, convert)."""
    import onnx

    from edgelstm.converters.lift_cells import lift_cells

    return [str(r) for r in lift_cells(onnx.load(str(path)))[1]]


@click.command()
@click.argument("model", type=click.Path(exists=True), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@handle_errors
def info(model, as_json):
    """Describe MODEL (architecture, parameters, size, quantization, I/O), or without
    MODEL the environment: versions, devices, kernels, BLAS and where calls run.

    \b
        $ edgelstm info
        $ edgelstm info examples/basicmotions/model
        $ edgelstm info model.onnx --json
    """
    from edgelstm.runtime.info import describe

    if model is None:
        _environment(as_json)
        return
    d = describe(model)
    if d["format"] == "onnx":
        d["lifted_cells"] = _lifted_cells(model)
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True, default=str))
        return
    rows = [("format", d["format"]), ("file size", _fmt_bytes(d["file_bytes"]))]
    if "architecture" in d:
        rows += [("architecture", d["architecture"]), ("parameters", f"{d['parameters']:,}"),
                 ("weights", f"{_fmt_bytes(d['weight_bytes'])} "
                             f"({d['bits_per_weight']:.2f} bits per weight)")]
        q = d.get("quantization")
        rows.append(("quantization", ", ".join(f"{k}={v}" for k, v in q.items())
                     if isinstance(q, dict) else "none (float32)"))
        if d.get("labels"):
            rows.append(("labels", ", ".join(d["labels"])))
    else:
        rows += [("opset", ", ".join(f"{k} {v}" for k, v in d["opset"].items())),
                 ("ops", ", ".join(f"{k} x{v}" for k, v in d["ops"].items())),
                 ("parameters", f"{d['parameters']:,}")]
        if d.get("metadata"):
            rows.append(("metadata", ", ".join(sorted(d["metadata"]))))
        rows.append(("lifted cells", "; ".join(d["lifted_cells"]) or "none"))
    rows += [("inputs", _fmt_io(d["inputs"])), ("outputs", _fmt_io(d["outputs"])),
             ("kernels", d["kernels"]), ("mlx blas", d["blas"]), ("placement", d["placement"])]
    _print_rows(rows)
