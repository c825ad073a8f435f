"""One trial, on whatever node Ray gives it: `trainable.py` sets it up (the
data, the feature classifier, its seeds' MLflow runs, the family, one or a
seed pack), `loop.py` trains and judges it epoch by epoch, evaluating,
logging, reporting and checkpointing; `probes.py` runs a family's latent
probes at each evaluation and `sample_grid.py` draws the pictures;
`session.py` is where it reports and checkpoints (Tune's session, or
`LocalSession` in-process); `clock.py` times its phases."""
