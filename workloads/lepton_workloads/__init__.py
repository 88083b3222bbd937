"""Code that runs inside Lepton's pods: the dataset preparer and the DDP trainer.

It never imports ``lepton_operator``: the two sides share only the documented
contract of environment variables (``LEPTON_DATASET_DIR``, ``WORLD_SIZE``, ...)
and files (``manifest.json``, the progress and result documents). The modules
arrive with the TrainingJob and LeptonDataset issues.
"""
