package targets_test

import (
	"encoding/json"
	"testing"

	"lifeboat/targets"
)

// State files and spools written before VolumeInfo had json tags carry
// Go field names as keys; they must read the same.
func TestVolumeInfoJSON(t *testing.T) {
	want := targets.VolumeInfo{ID: "9b2f7c1e-5d0a-4f8e-a1b3-2c4d6e8f0a1b", Name: "db", Size: 1 << 30, BlockSize: 4096}
	for _, tc := range []struct{ name, doc string }{
		{"legacy", `{"ID":"9b2f7c1e-5d0a-4f8e-a1b3-2c4d6e8f0a1b","Name":"db","Size":1073741824,"BlockSize":4096}`},
		{"current", `{"id":"9b2f7c1e-5d0a-4f8e-a1b3-2c4d6e8f0a1b","name":"db","size":1073741824,"block_size":4096}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got targets.VolumeInfo
			if err := json.Unmarshal([]byte(tc.doc), &got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
	want.Machine = "web01"
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	const doc = `{"id":"9b2f7c1e-5d0a-4f8e-a1b3-2c4d6e8f0a1b","name":"db","machine":"web01","size":1073741824,"block_size":4096}`
	if string(b) != doc {
		t.Fatalf("Marshal = %s, want %s", b, doc)
	}
	var back targets.VolumeInfo
	if err := json.Unmarshal(b, &back); err != nil || back != want {
		t.Fatalf("round trip = %+v, %v; want %+v", back, err, want)
	}
}
