"""A face drawn in code (hair, skin, brows, eyes, nose, lips; blurred): MTCNN finds it, with its
five landmarks where they were drawn, so the face tests need no photo of a person."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFilter

# where the drawn face's landmarks are, on the 160-pixel canvas: eyes, nose tip, mouth corners
DRAWN_LANDMARKS = ((63, 71), (97, 71), (80, 96), (67, 116), (93, 116))


def drawn_face(side: int = 160, background: tuple[int, int, int] = (90, 110, 140)) -> Image.Image:
    img = Image.new("RGB", (side, side), background)
    d = ImageDraw.Draw(img)
    s = side / 160

    def ellipse(box, fill):
        d.ellipse([v * s for v in box], fill=fill)

    d.rectangle([v * s for v in (30, 10, 130, 60)], fill=(60, 40, 25))  # hair
    ellipse((38, 25, 122, 140), (224, 172, 140))  # face
    ellipse((30, 70, 42, 95), (210, 160, 130))  # ears
    ellipse((118, 70, 130, 95), (210, 160, 130))
    d.line([v * s for v in (52, 60, 72, 58)], fill=(60, 40, 30), width=int(3 * s))  # brows
    d.line([v * s for v in (88, 58, 108, 60)], fill=(60, 40, 30), width=int(3 * s))
    for cx in (63, 97):  # eyes
        ellipse((cx - 10, 66, cx + 10, 76), (245, 245, 245))
        ellipse((cx - 4, 67, cx + 4, 75), (50, 35, 25))
    d.polygon([v * s for v in (80, 76, 74, 100, 86, 100)], fill=(200, 145, 115))  # nose
    ellipse((66, 110, 94, 122), (170, 70, 70))  # lips
    d.line([v * s for v in (67, 116, 93, 116)], fill=(90, 30, 30), width=int(2 * s))
    return img.filter(ImageFilter.GaussianBlur(1.2 * s))
