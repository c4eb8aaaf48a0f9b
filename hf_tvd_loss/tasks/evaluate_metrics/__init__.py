"""``evaluate`` metric modules shipped with the package, loaded by path (``hf_tvd_loss.tasks.metrics.load_metric``)."""
