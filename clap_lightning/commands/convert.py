"""`clap-lightning convert msclap FILE --out OUT`: import released weights as a clap-lightning checkpoint."""

from __future__ import annotations

import argparse



def add_msclap_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `clap-lightning convert msclap`."""
    parser.add_argument("file", help="msclap checkpoint (CLAP_weights_2022.pth, CLAP_weights_2023.pth, "
                                     "clapcap_weights_2023.pth)")
    parser.add_argument("--out", required=True, help="output file (.ckpt)")
    parser.add_argument("--variant", default="auto",
                        help="msclap release: 2023, 2022 or clapcap; auto = detect from the keys")
    parser.add_argument("--model-config", default=None,
                        help="model YAML (configs/model name or path); default msclap_2023 / msclap_2022")
    parser.add_argument("--tokenizer", default=None,
                        help="local tokenizer directory to store in the config instead of the hub id")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_subparsers(dest="format", required=True)
    add_msclap_arguments(formats.add_parser("msclap", help="Microsoft CLAP 2022 / 2023 / clapcap checkpoints"))
    hf = formats.add_parser("hf", help="a Hugging Face ClapModel folder (laion/clap-htsat-unfused, ...)")
    hf.add_argument("folder", help="folder with config.json and model.safetensors (or pytorch_model.bin)")
    hf.add_argument("--out", required=True, help="output file (.ckpt)")
    hf.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the folder's own files)")
    laion = formats.add_parser("laion", help="a LAION-CLAP checkpoint (630k-audioset-best.pt, music/speech variants)")
    laion.add_argument("file", help="checkpoint written by LAION-CLAP's training ({'state_dict': ...}, module. keys)")
    laion.add_argument("--out", required=True, help="output file (.ckpt)")
    laion.add_argument("--tokenizer", default="roberta-base", help="RoBERTa tokenizer directory (or hub id)")
    laion.add_argument("--text-heads", type=int, default=None,
                       help="RoBERTa attention heads (not in the weights; default hidden size / 64, 12 for base)")


def run(args: argparse.Namespace) -> int:
    """Convert `args.file` to `args.out`; prints what was written."""
    if args.format == "hf":
        from clap_lightning.convert.hf import convert_hf_folder

        kept = convert_hf_folder(args.folder, args.out, args.tokenizer)
        print(f"wrote {args.out} (Hugging Face ClapModel); kept at initial values, not in ClapModel and not "
              f"used by the embedding: {', '.join(kept) or 'nothing'}")
        return 0
    if args.format == "laion":
        from clap_lightning.convert.hf import convert_laion_file

        unused = convert_laion_file(args.file, args.out, args.tokenizer, args.text_heads)
        print(f"wrote {args.out} (LAION-CLAP); left out, unused by embeddings: {', '.join(unused) or 'nothing'}")
        return 0
    from clap_lightning.convert import convert_msclap_file

    variant = convert_msclap_file(args.file, args.out, args.variant, args.model_config, args.tokenizer)
    print(f"wrote {args.out} (msclap {variant})")
    return 0
