"""`clap-lightning export onnx CKPT --out DIR`: a model's towers for use outside clap-lightning."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="the audio and text towers as ONNX graphs (onnxruntime, TensorRT)")
    onnx.add_argument("checkpoint", help="a clap-lightning checkpoint (trained or converted)")
    onnx.add_argument("--out", required=True, help="bundle directory to write (audio.onnx, text.onnx, tokenizer/)")
    onnx.add_argument("--fp16", action="store_true", help="store weights in float16 (inputs and outputs stay float32)")
    hf = formats.add_parser("hf", help="a Hugging Face ClapModel folder (models ClapModel can express)")
    own = formats.add_parser("safetensors", help="clap-lightning's own layout: model.safetensors + config.yaml")
    for parser_ in (hf, own):
        parser_.add_argument("checkpoint", help="a clap-lightning checkpoint (trained or converted)")
        parser_.add_argument("--out", required=True, help="folder to write")


def run(args: argparse.Namespace) -> int:
    """Export `args.checkpoint` to `args.out`; prints what was written."""
    from clap_lightning.models.clap import CLAP

    model = CLAP.from_checkpoint(args.checkpoint)
    if args.format == "onnx":
        from clap_lightning.export.onnx import export_onnx

        out = export_onnx(model, args.out, fp16=args.fp16)
        print(f"wrote {out}/audio.onnx, {out}/text.onnx, {out}/tokenizer")
        return 0
    from clap_lightning.export.hf import export_hf, save_pretrained

    out = export_hf(model, args.out) if args.format == "hf" else save_pretrained(model, args.out)
    print(f"wrote {out} ({'Hugging Face ClapModel' if args.format == 'hf' else 'clap-lightning safetensors'})")
    return 0
