"""The loss study: does γ-CE help on my task? (``scripts/compare_losses.py``; plots need the ``study`` extra).

Trains the same model on the same data under each loss and seed, optionally with label noise in the training
targets, and reports mean ± std over seeds with paired 95 % intervals of every loss's difference from
cross-entropy, over seeds and over evaluation examples.

* ``compare.py`` — runs, aggregation, report and plots
* ``stats.py`` — paired intervals (Student t over seeds, paired bootstrap over examples)
* ``per_example.py`` — per-example records of an evaluation, for the paired bootstrap
* ``noise.py`` — label noise injected into training targets
* ``generation_metrics.py`` — repetition and diversity of sampled continuations (language modelling)
"""
