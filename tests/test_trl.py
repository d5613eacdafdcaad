"""The clients VLM users fine-tune and serve with, used as their documentation shows, on the tiny checkpoint:
TRL's `SFTTrainer` on a Hub-style `messages` + `images` dataset (full and LoRA, `assistant_only_loss`), TRL's
`GRPOTrainer` with a trivial reward, and transformers' `TextIteratorStreamer` fed by `generate` in a thread."""

import threading

import datasets
import torch
from core_support import ScriptedAnswer, random_image
from peft import LoraConfig
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessorList, TextIteratorStreamer
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from tinygptv_hf.stages import LORA_TARGETS

COLOURS = [("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 2
QUESTION = "[vqa] What colour is it?"


def messages_dataset() -> datasets.Dataset:
    """TRL's VLM layout: `images` (PIL) and `messages` whose first user turn holds an image block."""
    return datasets.Dataset.from_list(
        [
            {
                "images": [Image.new("RGB", (40, 30), rgb)],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": [{"type": "text", "text": colour}]},
                ],
            }
            for colour, rgb in COLOURS
        ]
    )


def sft_config(folder, **extra) -> SFTConfig:
    # bf16 off: TRL turns it on by default, and this CPU has no fast bf16.
    return SFTConfig(
        output_dir=str(folder),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        **extra,
    )


def fresh_model(checkpoint):
    return AutoModelForImageTextToText.from_pretrained(checkpoint)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def changed(model, before) -> set[str]:
    return {name for name, parameter in model.named_parameters() if not torch.equal(before[name], parameter)}


def test_sft_full_fine_tune_trains_every_part(tiny_checkpoint, tmp_path):
    model = fresh_model(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    trainer = SFTTrainer(
        model=model, args=sft_config(tmp_path), train_dataset=messages_dataset(), processing_class=processor
    )
    before = snapshot(trainer.model)
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    moved = changed(trainer.model, before)
    for part in ("vision_model.", "qformer.", "multi_modal_projector.", "language_model.", "lm_head."):
        assert any(part in name for name in moved), part


def test_sft_with_lora_and_assistant_only_loss(tiny_checkpoint, tmp_path):
    """The README's recipe: LoRA on the language model's attention only, loss on the answers only."""
    model = fresh_model(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert any(".qformer." in name for name, _ in model.named_modules() if name.endswith(".dense")), (
        "a bare 'dense' target would also reach the Q-Former"
    )
    trainer = SFTTrainer(
        model=model,
        args=sft_config(tmp_path, assistant_only_loss=True),
        train_dataset=messages_dataset(),
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS),
    )
    adapted = [name for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")]
    assert len(adapted) == 4 * model.config.text_config.num_hidden_layers  # q, k, v and dense of every layer
    assert all(".language_model.layers." in name for name in adapted)

    rows = [dict(row) for row in messages_dataset().select(range(2))]
    batch = trainer.data_collator(rows)
    tokenizer = processor.tokenizer
    for row, (colour, _) in enumerate(COLOURS[:2]):
        answer = tokenizer(f" {colour}###", add_special_tokens=False).input_ids
        length = int(batch["attention_mask"][row].sum())
        expected = torch.full_like(batch["labels"][row], -100)
        expected[length - len(answer) : length] = torch.tensor(answer)
        assert torch.equal(batch["labels"][row], expected), "only the answer and its end symbol carry labels"
        assert batch["input_ids"][row, length - len(answer) : length].tolist() == answer
        assert int((batch["input_ids"][row] == processor.image_token_id).sum()) == 32

    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(trainer.model, before)
    assert moved and all("lora_" in name for name in moved)
    assert any("lora_B" in name for name in moved)


def test_grpo_a_couple_of_steps_with_a_trivial_reward(tiny_checkpoint, tmp_path):
    """Needs `generate(generation_config=...)` to keep the model's `###` stop string (GRPO passes its own config),
    and `batch_decode(..., skip_special_tokens=True)` to end completions there."""
    model = fresh_model(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    tokenizer = processor.tokenizer
    red, end = tokenizer(" red###", add_special_tokens=False).input_ids
    dataset = datasets.Dataset.from_list(
        [
            {
                "image": Image.new("RGB", (40, 30), rgb),
                "prompt": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
                ],
            }
            for _, rgb in COLOURS
        ]
    )
    seen = []

    def shorter_is_better(completions, **kwargs):
        contents = [completion[0]["content"] for completion in completions]
        seen.extend(contents)
        return [-float(len(content)) for content in contents]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        # The random model samples " red" about half the time, and always "###" after it.
        generation_kwargs={"sequence_bias": {(red,): 7.0, (red, end): 60.0}},
    )
    trainer = GRPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        reward_funcs=shorter_is_better,
    )
    before = snapshot(trainer.model)
    trainer.train()

    assert len(seen) == 8
    assert " red" in seen, "a completion stopped at the end symbol and decoded without it"
    assert not any("###" in content for content in seen)
    assert any(content != " red" for content in seen)
    assert changed(trainer.model, before), "the policy learned from the rewards"


def test_text_iterator_streamer_with_generate_in_a_thread(tiny_model, tiny_processor):
    tokenizer = tiny_processor.tokenizer
    script = tokenizer(" A red square is here.###Human: and then", add_special_tokens=False).input_ids
    prompt = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
    )
    inputs = tiny_processor(images=[random_image(0)], text=[prompt], return_tensors="pt")
    streamer = TextIteratorStreamer(tiny_processor, skip_prompt=True, skip_special_tokens=True)
    result = {}

    def generate():
        result["output"] = tiny_model.generate(
            **inputs,
            streamer=streamer,
            tokenizer=tokenizer,
            max_new_tokens=len(script),
            logits_processor=LogitsProcessorList([ScriptedAnswer(script, inputs["input_ids"].shape[1])]),
        )

    thread = threading.Thread(target=generate)
    thread.start()
    chunks = list(streamer)
    thread.join()

    assert len(chunks) > 1 and "".join(chunks) == " A red square is here."
    new_tokens = result["output"][0, inputs["input_ids"].shape[1] :]
    assert tokenizer.decode(new_tokens).endswith("###"), "generation stopped at the end symbol"
