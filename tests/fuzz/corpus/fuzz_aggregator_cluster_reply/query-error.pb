
00000000000000b1*bad query: limit