"""Import of released checkpoints into clap-lightning models (Microsoft CLAP: `msclap`)."""

from clap_lightning.convert.msclap import (
    add_msclap_arguments,
    convert_clap,
    convert_clapcap,
    convert_command,
    detect_variant,
    map_clap_keys,
    read_msclap_state,
)

__all__ = [
    "add_msclap_arguments",
    "convert_clap",
    "convert_clapcap",
    "convert_command",
    "detect_variant",
    "map_clap_keys",
    "read_msclap_state",
]
