"""The job top to bottom (pipeline.py: check -> data -> teachers' logits -> system -> fit -> test -> record), the
LightningModule (system.py), the Trainer with its logger, checkpoints and DDP relaunch (trainer.py), and the teachers'
targets (teachers.py).

May import: tracking/ and everything below it. Not analysis/ or bench/: they build on this package.
"""
