"""The seed's script (DESIGN.md section 1) runs as written, on a tiny checkpoint."""
import subprocess
import sys

from minimax_m1.model_shards.tiny import make_checkpoint

SEED_SCRIPT = '''
import sys
path = sys.argv[1]
from minimax_m1 import MiniMaxM1Tokenizer, MiniMaxM1ForCausalLM
tokenizer = MiniMaxM1Tokenizer.from_pretrained(path)
model = MiniMaxM1ForCausalLM.from_pretrained(path)
inputs = tokenizer("ROMEO:", return_tensors="pt")
outputs = model.generate(**inputs, max_new_tokens=200)
print(tokenizer.decode(outputs[0]))
'''


def test_seed_script_runs_as_written(tmp_path):
    make_checkpoint(str(tmp_path), seed=7, eos_token_id=())  # no eos: all 200 tokens come out
    out = subprocess.run([sys.executable, "-c", SEED_SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ROMEO:")
    from minimax_m1 import MiniMaxM1ForCausalLM, MiniMaxM1Tokenizer

    tok = MiniMaxM1Tokenizer.from_pretrained(tmp_path)
    model = MiniMaxM1ForCausalLM.from_pretrained(tmp_path)
    inputs = tok("ROMEO:", return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=200)
    assert ids.shape == (1, inputs["input_ids"].shape[1] + 200)
    assert tok.decode(ids[0]) == tok.decode(ids) == out.stdout[:-1]


def test_sampling_is_seeded(tmp_path):
    make_checkpoint(str(tmp_path), seed=8, eos_token_id=())
    from minimax_m1 import MiniMaxM1ForCausalLM

    model = MiniMaxM1ForCausalLM.from_pretrained(tmp_path)
    ids = model.generate(input_ids=__import__("torch").tensor([[5, 6, 7]]), max_new_tokens=20, do_sample=True,
                         temperature=1.5, top_p=0.9, top_k=50, seed=3)
    again = model.generate(input_ids=__import__("torch").tensor([[5, 6, 7]]), max_new_tokens=20, do_sample=True,
                           temperature=1.5, top_p=0.9, top_k=50, seed=3)
    other = model.generate(input_ids=__import__("torch").tensor([[5, 6, 7]]), max_new_tokens=20, do_sample=True,
                           temperature=1.5, top_p=0.9, top_k=50, seed=4)
    assert ids.tolist() == again.tolist() != other.tolist()
