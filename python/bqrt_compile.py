"""`bqrt compile`'s task: compile one circuit with BQSKit's standard workflow on a worker.

Every worker's Python process has this module as ``bqrt_compile`` (python/bqrt_child.py).
`bqrt compile` (src/python/compile.rs) is a native client: it reads the input file, submits the
native ``python`` task ``{"call": "bqrt_compile.compile_circuit", "args": [...]}``, shows the
passes as their log records arrive, and writes the output file from the result. Only the
workers import BQSKit; the command itself starts no Python.

The task does what ``bqskit.compile(circuit, optimization_level=L, seed=S, compiler=c)`` does
on a runtime: build the standard workflow for the circuit, then run BQSKit's own
``CompilationTask`` as the job's root task, so passes submit and map their children as they
would on BQSKit's runtime and the output is the same.
"""
from __future__ import annotations

from typing import Any


def _counts(circuit: Any) -> dict[str, int]:
    return {str(g): int(n) for g, n in circuit.gate_counts.items()}


def _figures(circuit: Any) -> dict[str, Any]:
    return {
        'operations': int(circuit.num_operations),
        'depth': int(circuit.depth),
        'gates': _counts(circuit),
    }


async def compile_circuit(
    text: str,
    input_format: str,
    output_format: str,
    level: int,
    seed: int | None,
) -> dict[str, Any]:
    """Compile the circuit written in ``text`` (a language BQSKit reads, named by its file
    extension); the output written in ``output_format``, with the figures before and after."""
    from bqskit.compiler.compile import build_workflow
    from bqskit.compiler.task import CompilationTask
    from bqskit.ir.lang import get_language

    try:
        reader = get_language(input_format)
    except Exception as e:
        raise ValueError(f'BQSKit reads no circuits of format {input_format!r}: {e}') from None
    try:
        writer = get_language(output_format)
    except Exception as e:
        raise ValueError(f'BQSKit writes no circuits of format {output_format!r}: {e}') from None
    try:
        circuit = reader.decode(text)
    except Exception as e:
        raise ValueError(f'cannot read the circuit: {type(e).__name__}: {e}') from None
    if not all(r == circuit.radixes[0] for r in circuit.radixes):
        raise ValueError('mixed-radix circuits have no standard workflow in BQSKit')
    before = _figures(circuit)
    # the unitary is kept for the check only where it is small; the run changes the circuit
    unitary = circuit.get_unitary() if circuit.num_qudits <= 10 else None
    workflow = build_workflow(circuit, None, level, 1e-8, 3, None, 8, seed)
    task = CompilationTask(circuit, workflow)
    out = await task.run()
    distance = None
    if unitary is not None:
        distance = float(out.get_unitary().get_distance_from(unitary, 1))
    return {
        'output': writer.encode(out),
        'before': before,
        'after': _figures(out),
        'distance': distance,
    }
