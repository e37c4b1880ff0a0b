# Board build manifest: this firmware frozen into a MicroPython image for an ESP32,
# so its bytecode and names live in flash, not in the ~112 KB heap:
#
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/repo/manifest.py
#
# On top of the stock ESP32 board manifest, which already freezes asyncio, the
# networking bundle and umqtt.simple 1.8.0. Freezes firmware/ and hal/ (the board
# contract, the ESP32 driver and the network layer); never sim/, which stands in
# for the hardware on a PC. tools/mpbuild.py freezes the same through
# tools/esp32_unix_manifest.py (stock=False) into the ESP32-faithful unix port.
options.defaults(stock=True)
if options.stock:
    include("$(PORT_DIR)/boards/manifest.py")
package("firmware")
package("hal")
