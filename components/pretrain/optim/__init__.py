"""Optimisation of pretraining: the LAMB optimiser (:mod:`.lamb`) and the learning-rate schedules (:mod:`.schedule`)."""
