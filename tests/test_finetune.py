"""Fine-tuning a released stage on a user's own `messages` data, as the README shows: LoRA and QLoRA."""

import json

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig, TrainingArguments

from tinygptv_hf.data import read_messages
from tinygptv_hf.trainers import MultitaskTrainer


def user_dataset(folder):
    """A user's jsonl in the Hub `messages` + `images` layout, with real image files."""
    records = []
    for index, (colour, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 4):
        Image.new("RGB", (40, 30), rgb).save(folder / f"{index}.png")
        records.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "[vqa] What colour is it?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": colour}]},
                ],
                "images": [f"{index}.png"],
            }
        )
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records))
    return path


def arguments(folder, **extra):
    return TrainingArguments(
        output_dir=str(folder),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        warmup_steps=0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        **extra,
    )


def test_lora_finetune_with_the_stage4_trainer(tiny_checkpoint, tmp_path):
    data = user_dataset(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    trainer = MultitaskTrainer(
        model, arguments(tmp_path / "run"), processor=processor, train_dataset=read_messages(data, tmp_path)
    )
    trainer.train()
    final = trainer.finish_stage()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    tuned = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True)
    assert tuned.config.stage == 4 and tuned.config.vision_config.image_size == 448
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def test_qlora_finetune_on_a_4bit_model(tiny_checkpoint, tmp_path):
    data = user_dataset(tmp_path)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, quantization_config=quantization)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    trainer = MultitaskTrainer(
        model, arguments(tmp_path / "run"), processor=processor, train_dataset=read_messages(data, tmp_path)
    )
    lora_before = {
        name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_B" in name
    }
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    lora_after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(lora_before[name], lora_after[name]) for name in lora_before)
    assert (
        type(
            trainer.model.base_model.model.model.language_model.layers[0].self_attn.q_proj.base_layer
        ).__name__
        == "Linear4bit"
    )
