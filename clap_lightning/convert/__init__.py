"""Import of released checkpoints into clap-lightning models (Microsoft CLAP: `msclap`)."""

from clap_lightning.convert.msclap import (
    VARIANTS,
    convert_clap,
    convert_clapcap,
    convert_msclap_file,
    detect_variant,
    map_clap_keys,
    read_msclap_state,
)

__all__ = [
    "VARIANTS",
    "convert_clap",
    "convert_clapcap",
    "convert_msclap_file",
    "detect_variant",
    "map_clap_keys",
    "read_msclap_state",
]
