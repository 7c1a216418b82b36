"""A1111 prompt editing ([from:to:when], [to:when], [from::when]) and alternation ([a|b]) with
long_prompt="a1111": the schedule, and pipeline images equal to diffusers' with a callback swapping the
embeddings at the same UNet calls."""
import pytest
import torch

from impasto.text.prompt_schedule import has_editing, prompt_schedule

from pipeline_utils import gen, max_diff, shared_pair

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("text, steps, expected", [
    ("a [cat:dog:0.5]", 20, [(10, "a cat"), (20, "a dog")]),
    ("a [dog:5] b", 10, [(5, "a  b"), (10, "a dog b")]),
    ("a [cat::3] b", 10, [(3, "a cat b"), (10, "a  b")]),
    ("[a|b] x", 4, [(1, "a x"), (2, "b x"), (3, "a x"), (4, "b x")]),
    ("[a|b|c]", 5, [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")]),
    ("x [(red:1.2):blue:0.25] y", 8, [(2, "x (red:1.2) y"), (8, "x blue y")]),
    ("[a:[b:c:4]:2]", 6, [(2, "a"), (4, "b"), (6, "c")]),
    ("[cat:dog:0]", 3, [(3, "dog")]),
    ("[cat:dog:50]", 3, [(3, "cat")]),
    # not editing: emphasis, unclosed or escaped brackets, a non-number
    ("(a:1.2) [b] c", 10, [(10, "(a:1.2) [b] c")]),
    ("[a:b:0.5", 10, [(10, "[a:b:0.5")]),
    ("[a:b:c]", 4, [(4, "[a:b:c]")]),
    ("\\[a:b:1\\]", 4, [(4, "\\[a:b:1\\]")]),
])
def test_schedule(text, steps, expected):
    assert prompt_schedule(text, steps) == expected
    assert has_editing(text) == (expected != [(steps, text)])


def _embeds(pipe, prompt, negative):
    pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative, long_prompt="a1111")
    return torch.cat([neg, pos])


@pytest.mark.parametrize("scheduler, prompt, negative, switch, guidance", [  # the tiny model hears text faintly
    ("EulerDiscreteScheduler", "a [red:(blue square:1.8):0.25] square", "blurry",
     {2: ("a (blue square:1.8) square", "blurry")}, 30.0),
    # A1111 counts calls from 0 and ends from 1, so calls 0 and 1 both take the first option: a, a, b, a, ...
    ("EulerDiscreteScheduler", "a [red|(blue square:1.8)] square", "[dark|light]",
     {i: ("a red square" if i % 2 else "a (blue square:1.8) square", "dark" if i % 2 else "light") for i in (2, 3)},
     15.0),
    ("HeunDiscreteScheduler", "a [red:(blue square:1.8):1] square", None, {2: ("a (blue square:1.8) square", None)},
     30.0),
], ids=["edit", "alternate", "heun"])
@torch.no_grad()
def test_pipeline_matches_diffusers_with_swapping_callback(scheduler, prompt, negative, switch, guidance):
    """UNet call i uses the prompt scheduled for it; diffusers given the first embeddings and a step-end callback
    that swaps in call i+1's embeddings draws the same image (4 steps; Heun makes 7 UNet calls)."""
    pair = shared_pair("sd1")
    pair.set_scheduler(scheduler)
    first_texts = (prompt_schedule(prompt, 4)[0][1], prompt_schedule(negative, 4)[0][1] if negative else None)
    first = _embeds(pair.mine, *first_texts)
    swaps = {i: _embeds(pair.mine, *texts) for i, texts in switch.items()}

    def swap(pipe, i, t, kwargs):
        return {"prompt_embeds": swaps[i + 1]} if i + 1 in swaps else {}

    kw = dict(num_inference_steps=4, output_type="np", guidance_scale=guidance)
    mine = pair.mine(prompt, negative_prompt=negative, long_prompt="a1111", generator=gen(0), **kw).images
    neg, pos = first.chunk(2)
    ref = pair.ref(prompt_embeds=pos, negative_prompt_embeds=neg, generator=gen(0), callback_on_step_end=swap,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **kw).images
    assert max_diff(mine, ref) < 1e-5
    plain = pair.mine(first_texts[0], negative_prompt=first_texts[1], long_prompt="a1111",
                      generator=gen(0), **kw).images
    assert max_diff(mine, plain) > 1e-4  # the edit changed the picture (ten times the difference allowed above)


@torch.no_grad()
def test_img2img_counts_the_calls_it_runs():
    """img2img: the schedule is laid over the requested steps and the calls run are counted from 0, as A1111 does:
    with 4 steps at strength 0.5 the 2 calls run are calls 0 and 1, which both take the first option."""
    pair = shared_pair("sd1")
    pair.set_scheduler("EulerDiscreteScheduler")
    _, mine = pair.img2img()
    image = torch.rand(1, 3, 32, 32, generator=gen(3))
    kw = dict(image=image, strength=0.5, num_inference_steps=4, output_type="np", guidance_scale=15.0)
    got = mine("a [red|(blue square:1.8)] square", long_prompt="a1111", generator=gen(0), **kw).images
    red = mine("a red square", long_prompt="a1111", generator=gen(0), **kw).images
    blue_first = mine("a [(blue square:1.8)|red] square", long_prompt="a1111", generator=gen(0), **kw).images
    assert max_diff(got, red) == 0.0 and max_diff(got, blue_first) > 1e-4


@torch.no_grad()
def test_sdxl_edits_prompt_and_pooled_embeds():
    """SDXL: both the token embeddings and the pooled ones follow the schedule (diffusers' callback swaps both);
    prompt_2 takes the syntax too."""
    from sdxl_utils import sdxl_pair

    pair = sdxl_pair()
    pipe = pair.mine
    args = dict(device="cpu", negative_prompt="blurry")

    def state(prompt, prompt_2=None):
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, prompt_2, long_prompt="a1111", **args)
        return pos, neg, pooled, neg_pooled

    later = state("a (blue square:1.8) square", "a green circle")
    swap_to = {"prompt_embeds": torch.cat([later[1], later[0]]), "add_text_embeds": torch.cat([later[3], later[2]])}

    def swap(p, i, t, kwargs):
        return swap_to if i + 1 == 2 else {}

    first = state("a red square", "a green circle")
    kw = dict(num_inference_steps=4, output_type="np", guidance_scale=15.0)
    mine = pipe("a [red:(blue square:1.8):0.25] square", prompt_2="a green [circle|circle]", negative_prompt="blurry",
                long_prompt="a1111", generator=gen(0), **kw).images
    ref = pair.ref(prompt_embeds=first[0], negative_prompt_embeds=first[1], pooled_prompt_embeds=first[2],
                   negative_pooled_prompt_embeds=first[3], generator=gen(0), callback_on_step_end=swap,
                   callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"], **kw).images
    assert max_diff(mine, ref) < 1e-5
    plain = pipe("a red square", prompt_2="a green circle", negative_prompt="blurry", long_prompt="a1111",
                 generator=gen(0), **kw).images
    assert max_diff(mine, plain) > 1e-4
