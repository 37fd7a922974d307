"""The pod launcher (rlvr-pod): create a TPU slice, set it up, run a program on every worker under a
supervisor that restarts it after a failed worker or a lost slice, read logs and status, delete."""
