"""clap-lightning: Contrastive Language-Audio Pretraining at cluster scale."""

__version__ = "0.1.0"
