// f32 tiles and products (the default).
alias T = f32;
