"""Ray Train jobs (installed as ``squad.train``): aligner and inspector loops and the launcher."""
