package failover_test

import (
	"bytes"
	"testing"

	"lifeboat/failover"
)

// FuzzMapHeader feeds the map header decoder arbitrary bytes: it must not
// panic, and a header it accepts must encode back to the same bytes.
func FuzzMapHeader(f *testing.F) {
	f.Add(failover.EncodeMapHeader(4096, 1<<30, 7)[:64])
	f.Add(failover.EncodeMapHeader(4096, 512, 1)[:48])
	f.Add(failover.EncodeMapHeader(512, 0, 0)[:48])
	f.Add([]byte("LBOVMAP1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		bsz, size, seq, err := failover.DecodeMapHeader(b)
		if err != nil {
			return
		}
		if bsz < 512 || size < 0 || size%512 != 0 {
			t.Fatalf("accepted block size %d, volume size %d", bsz, size)
		}
		if enc := failover.EncodeMapHeader(bsz, size, seq); !bytes.Equal(enc[:48], b[:48]) {
			t.Fatalf("header %x decodes to (%d, %d, %d), which encodes to %x", b[:48], bsz, size, seq, enc[:48])
		}
	})
}
