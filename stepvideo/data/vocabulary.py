"""The embedded domain's vocabulary: each attribute value with its English and Chinese words.

The one home of the words the synthetic dataset renders and captions (`data.synth`), the benchmark
and its parser build on (`evaluation.prompts`, `evaluation.segment`, `evaluation.scorer`), and the
tiny text encoders' tokenizer corpus is written in (`models.tiny_text.sample_captions`). A leaf
module: it imports nothing, so every layer may read it (like `errors` and `fileio`).
"""

# value -> (English, Chinese). Order matters: it is part of the generator.
SHAPES = {"circle": ("circle", "圆形"), "square": ("square", "正方形"), "triangle": ("triangle", "三角形"),
          "diamond": ("diamond", "菱形"), "star": ("star", "星形")}
COLORS = {"red": ((225, 45, 45), "红色"), "green": ((50, 200, 70), "绿色"), "blue": ((50, 90, 235), "蓝色"),
          "yellow": ((240, 220, 50), "黄色"), "purple": ((160, 70, 210), "紫色"), "orange": ((245, 140, 30), "橙色"),
          "white": ((240, 240, 240), "白色"), "cyan": ((40, 210, 220), "青色")}
BACKGROUNDS = {"black": ((18, 18, 22), "黑色"), "gray": ((110, 110, 115), "灰色"),
               "navy": ((20, 30, 75), "深蓝色"), "brown": ((85, 55, 35), "棕色")}
SIZES = {"small": (0.13, "小的"), "medium": (0.19, "中等大小的"), "large": (0.26, "大的")}
DIRECTIONS = {"left": ((-1, 0), "向左"), "right": ((1, 0), "向右"), "up": ((0, -1), "向上"), "down": ((0, 1), "向下")}
SPEEDS = {"slow": (0.25, "slowly", "缓慢地"), "fast": (0.5, "quickly", "快速地")}
ACTIONS = ("move", "move2", "grow", "shrink", "rotate_cw", "rotate_ccw", "still")
CAMERAS = {"static": ("", ""), "pan_left": ("The camera pans left.", "镜头向左平移。"),
           "pan_right": ("The camera pans right.", "镜头向右平移。"),
           "zoom_in": ("The camera zooms in.", "镜头拉近。"), "zoom_out": ("The camera zooms out.", "镜头拉远。")}
