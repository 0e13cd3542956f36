"""Losses shared by pretraining and few-shot finetuning: Dice/Tversky + BCE over multi-mask targets (:mod:`.segmentation`)."""
