// f16 tiles and products, where the device has shaderFloat16; sums stay f32.
enable f16;
alias T = f16;
