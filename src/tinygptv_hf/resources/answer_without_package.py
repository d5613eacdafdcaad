"""Answer questions about images with a checkpoint folder's own remote code, in a process where tinygptv_hf cannot
be imported, as on a machine that has only transformers: `python answer_without_package.py FOLDER` reads
`[[image path, question], ...]` as JSON on stdin and prints the answers as a JSON list."""

import json
import sys

sys.modules["tinygptv_hf"] = None

from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

folder, items = sys.argv[1], json.load(sys.stdin)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
if not type(model).__module__.startswith("transformers_modules"):
    sys.exit(f"the model came from {type(model).__module__}, not from the folder's remote code")
answers = []
for path, question in items:
    content = [{"type": "image"}, {"type": "text", "text": "[vqa] " + question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=[Image.open(path)], text=[prompt], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False, tokenizer=processor.tokenizer)
    text = processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])[0]
    answers.append(processor.clean_answer(text))
print(json.dumps(answers))
