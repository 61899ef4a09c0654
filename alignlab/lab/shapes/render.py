"""Draw a `Scene` with PIL, and read a scene back from the pixels as a check of the gold.

Drawing. The image is `image_size` pixels square (64-224, default 96: 32-pixel cells, where
a small star is still ~16 pixels across and clearly a star, while a PNG stays under 1 KB),
black, with each shape centred in its grid cell, `HALF_EXTENT[size]` of the cell from centre to
edge: a square is the full box, a circle the inscribed ellipse, a triangle points up with its
base on the box's bottom edge, a star has five points (inner radius 0.4 of the outer) and
its bounding box centred. PIL's ImageDraw does not anti-alias, so every pixel is the
background or a palette colour exactly, and the same scene always gives byte-identical PNG
bytes (PIL writes no timestamp).

Read-back (`read_back`). Each pixel gets the nearest palette colour; each colour's mask is
cut into 8-connected components (scipy.ndimage.label); a component's bounding box gives the
cell (its centre), the size (its longer side over the cell side: large ~0.8, small ~0.5) and,
with the pixel count, the kind by fill ratio (pixels / bounding-box area):

    square ~1.0    circle ~pi/4 = 0.785    triangle ~0.5    star ~0.35
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from alignlab.lab.shapes.spec import BACKGROUND, CELLS, COLOURS, Scene, Shape, cell_position

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, DEFAULT_IMAGE_SIZE = 64, 224, 96
HALF_EXTENT = {"small": 0.26, "large": 0.40}  # of the cell side
SIZE_THRESHOLD = 0.67  # longer box side / cell side: small measures 0.48-0.58, large 0.76-0.84
STAR_INNER = 0.4  # inner / outer radius of the star
# Fill-ratio cuts between star | triangle | circle | square, midway between the ranges
# measured at every size 64-224 (rasterising adds edge pixels, which lifts small shapes'
# ratios): star 0.34-0.44, triangle 0.50-0.55, circle 0.75-0.80, square 1.0.
FILL_CUTS = ((0.47, "star"), (0.65, "triangle"), (0.9, "circle"), (math.inf, "square"))
PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.int32)  # (9, 3)
_PALETTE_NAMES = (None, *COLOURS)


def check_image_size(image_size: int) -> None:
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size}: must be {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} pixels"
        )


def render(scene: Scene, image_size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image `image_size` pixels square."""
    check_image_size(image_size)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    for shape in scene.shapes:
        _draw_shape(draw, shape, cell)
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, cell: float) -> None:
    row, col = cell_position(shape.cell)
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    h = HALF_EXTENT[shape.size] * cell
    fill = COLOURS[shape.colour]
    # Integer corners: the drawing depends on nothing but the scene and the image size.
    x0, y0, x1, y1 = round(cx - h), round(cy - h), round(cx + h) - 1, round(cy + h) - 1
    if shape.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        # The points reach h above the centre and h*cos(36 deg) below it: shift down by half
        # the difference so the bounding box is centred like the other kinds'.
        centre_y = cy + h * (1 - math.cos(math.pi / 5)) / 2
        points = []
        for i in range(10):
            radius = h if i % 2 == 0 else STAR_INNER * h
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
        draw.polygon([(round(x, 3), round(y, 3)) for x, y in points], fill=fill)


def png_bytes(scene: Scene, image_size: int = DEFAULT_IMAGE_SIZE) -> bytes:
    """The rendered scene as PNG bytes (the same scene and size: the same bytes)."""
    buffer = io.BytesIO()
    render(scene, image_size).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_indices(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) index of each pixel's nearest palette colour: 0 background, i the i-th colour."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels.astype(np.int32)[:, :, None, :]  # (H, W, 1, 3)
    distances = ((pixels - PALETTE[None, None]) ** 2).sum(-1)  # (H, W, 9)
    return distances.argmin(-1)


def read_back(image: Image.Image | np.ndarray) -> Scene:
    """The scene recovered from the pixels alone (module docstring); ValueError when the
    image holds something no scene draws (two shapes in a cell, no shape)."""
    indices = colour_indices(image)
    height, width = indices.shape
    cell = width / 3
    shapes = []
    for index, colour in enumerate(_PALETTE_NAMES):
        if colour is None:
            continue
        labels, n_components = ndimage.label(indices == index, structure=np.ones((3, 3)))
        for component, box in enumerate(ndimage.find_objects(labels), 1):
            rows, cols = box
            box_height, box_width = rows.stop - rows.start, cols.stop - cols.start
            area = int((labels[box] == component).sum())
            fill = area / (box_height * box_width)
            kind = next(name for cut, name in FILL_CUTS if fill < cut)
            size = "large" if max(box_height, box_width) / cell > SIZE_THRESHOLD else "small"
            row = min(2, int((rows.start + rows.stop) / 2 / (height / 3)))
            col = min(2, int((cols.start + cols.stop) / 2 / cell))
            shapes.append(Shape(kind, colour, size, CELLS[3 * row + col]))
    return Scene(tuple(shapes))
