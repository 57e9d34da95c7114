"""The seed API's names, defined once: the request's field names (RunComfy's node ids) and its examples.

``serve.api.schemas`` builds the request model from them; the input checks name the field a problem is in.
"""

PROMPT = "241_positive_prompt"
IMAGE = "284_image"
AUDIO = "125_audio"
SIZE = "245_valuex246_value"
FRAMES = "270_value"
SEED = "128_seed"
STEPS = "128_steps"
SHIFT = "128_shift"
CFG = "128_cfg"

# The two-speaker endpoint's inputs (its knobs have plain names too: serve.api.knobs).
MULTI_IMAGE = "image"
LEFT_AUDIO = "left_audio"
RIGHT_AUDIO = "right_audio"
LEFT_BOX = "left_box"
RIGHT_BOX = "right_box"

EXAMPLE_IMAGE = "Runcomfy_example_1278_1.png"
EXAMPLE_AUDIO = "Runcomfy_example_1278_1.mp3"

# The video-to-video endpoint's inputs.
VIDEO = "video"
DUB_AUDIO = "audio"
