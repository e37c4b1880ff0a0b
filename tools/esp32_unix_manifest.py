# Frozen modules of the ESP32-faithful unix interpreter (tools/mpbuild.py).
# The unix port's own (asyncio, ssl, mip), what the board image freezes from this
# repository (../manifest.py without the ESP32 port's modules), umqtt.simple from
# micropython-lib as stock ESP32 images freeze it, and the simulator, which plays
# the board's hardware here and is never part of a board image.
include("$(PORT_DIR)/variants/manifest.py")
include("../manifest.py", stock=False)
require("umqtt.simple")
package("sim", base_path="..")
