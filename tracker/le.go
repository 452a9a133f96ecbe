package tracker

import "encoding/binary"

var hrlLE = binary.LittleEndian
