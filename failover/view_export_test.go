package failover

// DecodeMapHeader decodes a map header and returns its fields, for the
// fuzz target.
func DecodeMapHeader(b []byte) (blockSize, volumeSize int64, seq uint64, err error) {
	h, err := decodeMapHeader(b)
	return h.BlockSize, h.VolumeSize, h.PointSeq, err
}

// EncodeMapHeader encodes a current map header.
func EncodeMapHeader(blockSize, volumeSize int64, seq uint64) []byte {
	return encodeMapHeader(mapHeader{Version: mapVersion, BlockSize: blockSize, VolumeSize: volumeSize,
		PointSeq: seq, Blocks: blockCount(volumeSize, blockSize)})
}

// Map file layout constants, for tests that read or damage the map file.
const (
	MapName       = mapName
	DataName      = dataName
	MapHeaderSize = mapHeaderPage
)
