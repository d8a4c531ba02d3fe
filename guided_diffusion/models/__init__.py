"""The networks: the ADM UNet, super-resolution UNet and noisy classifier (`unet`), attention (`attention`),
shared layers and fp16 conversion (`layers`), and their construction from settings (`factory`)."""
