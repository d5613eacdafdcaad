"""Fine-tuning a released stage on a user's own `messages` data, as the README shows: LoRA and QLoRA, from files
or a Hub dataset passed to the trainer as it is."""

import json

import datasets
import pytest
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
    args = arguments(tmp_path / "run")
    trainer = MultitaskTrainer(model, args, processor=processor, train_dataset=read_messages(data, tmp_path))
    assert args.remove_unused_columns and not args.ignore_data_skip, "the caller's arguments were changed"
    trainer.train()
    trainer.save_model(tmp_path / "saved")  # the Trainer API's own save: a complete, loadable folder
    final = trainer.finish_stage()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    tuned = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True)
    assert tuned.config.stage == 4 and tuned.config.vision_config.image_size == 448
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    tuned_weights = tuned.state_dict()
    assert all(torch.equal(value, tuned_weights[name]) for name, value in saved.state_dict().items())
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


def hub_rows():
    """Rows of a Hub dataset in the `messages` + `images` layout, the images as PIL objects."""
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "[vqa] What colour is it?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": colour}]},
            ],
            "images": [Image.new("RGB", (40, 30), rgb)],
        }
        for colour, rgb in [("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 2
    ]


@pytest.mark.parametrize("kind", ["dataset", "stream without features"])
def test_stage_trainer_reads_a_hub_messages_dataset_itself(tiny_checkpoint, tmp_path, kind):
    """Regression: a `messages` dataset failed at the first batch with KeyError 'turns'."""
    rows = hub_rows()
    if kind == "dataset":
        dataset = datasets.Dataset.from_list(rows)
    else:
        dataset = datasets.IterableDataset.from_generator(lambda: iter(rows))
        assert dataset.column_names is None
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    trainer = MultitaskTrainer(model, arguments(tmp_path / "run"), processor=processor, train_dataset=dataset)

    batch = next(iter(trainer.get_train_dataloader()))
    expected = trainer.data_collator(list(read_messages(datasets.Dataset.from_list(rows))))
    assert batch.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(batch[key], expected[key])
    answers = [processor.tokenizer.decode(row[row != -100]) for row in batch["labels"]]
    assert answers == ["red###", "blue###", "red###", "blue###"]


def test_stage_trainer_names_read_messages_for_other_layouts(tiny_checkpoint, tmp_path):
    dataset = datasets.Dataset.from_list([{"question": "What colour?", "answer": "red"}])
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"\['question', 'answer'\].*read_messages"):
        MultitaskTrainer(model, arguments(tmp_path / "run"), processor=processor, train_dataset=dataset)
