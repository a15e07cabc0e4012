# Writes the file IN as a C byte array named NAME into OUT (cmake -P; CMakeLists.txt).
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
if(n EQUAL 0)
  message(FATAL_ERROR "${IN} is empty")
endif()
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
file(WRITE ${OUT}.tmp
     "/* Generated from ${SRC} by CMakeLists.txt: do not edit. */\n"
     "static const unsigned char ${NAME}[] = {${hex}};\n")
file(RENAME ${OUT}.tmp ${OUT})
