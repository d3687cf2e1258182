"""Benchmarks and soak runs of codeexec-operator against the real local cluster.

    .venv/bin/python -m bench          # make bench: warm vs cold latency, throughput, cost
    .venv/bin/python -m bench.chaos    # make chaos: at-most-once under kills and pod deletion
    .venv/bin/python -m bench.scale    # make scale: restart with 5,200 executions present

Each takes `--smoke` for a short run (results go to `bench/*.tmp`, which git ignores).
Everything runs in its own namespaces with its own operator process and pools
(`codeexec.io/instance=bench`), and is deleted when the run ends.
"""
