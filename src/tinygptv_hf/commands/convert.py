"""`tinygptv convert`: a stage checkpoint folder from the files of the original TinyGPT-V release."""

from ..stages import TRAINING_STAGES, LoraSpec


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert the original release (Phi-2, EVA ViT, BLIP-2, TinyGPT-V_for_StageN.pth) to a checkpoint folder",
        description="Every source tensor must be used or knowingly ignored: a missing or unexpected key, a shape "
        "mismatch or a LoRA tensor without its base stops the conversion with the key's name.",
    )
    parser.add_argument(
        "--stage", type=int, choices=sorted(TRAINING_STAGES), required=True, help="released stage (4: 448 px)"
    )
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument(
        "--phi",
        help="transformers Phi folder (4.36 fused query_key_value or q/k/v_proj; .bin/.safetensors, sharded)",
    )
    parser.add_argument("--eva-vit", help="LAVIS eva_vit_g.pth (needs --blip2 .pth)")
    parser.add_argument(
        "--blip2",
        help="LAVIS blip2_pretrained_flant5xxl.pth (Q-Former, query tokens, ln_vision) or a BLIP-2 folder",
    )
    parser.add_argument(
        "--stage-checkpoint", help="TinyGPT-V_for_StageN.pth (trainable tensors; applied last)"
    )
    parser.add_argument(
        "--full-state-dict", help="the original wrapper's whole state dict (original key names)"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the --phi folder)")
    parser.add_argument(
        "--config", help="TinyGPTVConfig json (default: phi2 preset with the Phi folder's text config)"
    )
    parser.add_argument(
        "--lora-r", type=int, default=LoraSpec.r, help=f"LoRA rank of the release (default {LoraSpec.r})"
    )
    parser.add_argument(
        "--lora-alpha",
        type=int,
        default=LoraSpec.alpha,
        help=f"LoRA alpha; scaling is alpha/r (default {LoraSpec.alpha})",
    )
    parser.add_argument(
        "--keep-adapter",
        action="store_true",
        help="also write OUTPUT/adapter (peft LoRA) and OUTPUT/base (the un-merged model it applies to)",
    )
    parser.set_defaults(run=run)


def run(args):
    from ..cards import release_card
    from ..conversion import convert_release

    folder = convert_release(
        args.output,
        stage=args.stage,
        phi=args.phi,
        eva_vit=args.eva_vit,
        blip2=args.blip2,
        full_state_dict=args.full_state_dict,
        stage_checkpoint=args.stage_checkpoint,
        tokenizer=args.tokenizer,
        config=args.config,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        keep_adapter=args.keep_adapter,
    )
    release_card(folder).save(folder / "README.md")
    print(f"wrote stage-{args.stage} checkpoint converted from the original release to {folder}")
