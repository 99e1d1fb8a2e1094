# Renders every template in jinja/ with Python's Jinja2 (what Hugging Face's
# apply_chat_template runs) into reference/<template>/<conversation>, the
# output the Go engine must reproduce. A template that refuses a
# conversation (raise_exception) gets a file holding "ERROR: <message>".
# Run: python3 gen_reference.py (needs jinja2).
import glob, json, os
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONVS = json.load(open("conversations.json"))

class Raised(Exception):
    pass

def raise_exception(msg):
    raise Raised(msg)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.globals["raise_exception"] = raise_exception
env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
for path in sorted(glob.glob("jinja/*.jinja")):
    name = os.path.basename(path)[:-len(".jinja")]
    tmpl = env.from_string(open(path).read())
    os.makedirs(f"reference/{name}", exist_ok=True)
    for conv, msgs in CONVS.items():
        try:
            out = tmpl.render(messages=msgs, add_generation_prompt=True, bos_token="<s>", eos_token="</s>", date_string="26 Jul 2024")
            if out.startswith("<s>"):
                out = out[len("<s>"):]  # the tokenizer adds BOS
        except Raised as e:
            out = f"ERROR: {e}"
        open(f"reference/{name}/{conv}", "w").write(out)
