package azure_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/targets/azure"
)

func testKey(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	key := make([]byte, azure.XTSKeySize)
	for i := range key {
		key[i] = byte(rng.Uint32())
	}
	return key
}

func newCipher(t testing.TB, key []byte) *azure.SectorCipher {
	t.Helper()
	c, err := azure.NewSectorCipher(key)
	if err != nil {
		t.Fatalf("NewSectorCipher: %v", err)
	}
	return c
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestSectorCipherRoundTrip(t *testing.T) {
	c := newCipher(t, testKey(1))
	rng := rand.New(rand.NewPCG(2, 2))
	for i := 0; i < 50; i++ {
		n := (1 + rng.IntN(64)) * azure.SectorSize
		off := int64(rng.IntN(1<<20)) * azure.SectorSize
		plain := randomBytes(rng, n)
		enc := make([]byte, n)
		if err := c.Encrypt(enc, plain, off); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(enc, plain) {
			t.Fatal("ciphertext equals plaintext")
		}
		dec := make([]byte, n)
		if err := c.Decrypt(dec, enc, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dec, plain) {
			t.Fatalf("round trip at %d+%d differs", off, n)
		}
		// In place gives the same bytes, and a sub-range decrypts on its
		// own: random access survives.
		inPlace := append([]byte(nil), plain...)
		if err := c.Encrypt(inPlace, inPlace, off); err != nil || !bytes.Equal(inPlace, enc) {
			t.Fatalf("in-place encrypt differs (err %v)", err)
		}
		if n > azure.SectorSize {
			k := rng.IntN(n/azure.SectorSize-1) + 1
			part := make([]byte, azure.SectorSize)
			if err := c.Decrypt(part, enc[k*azure.SectorSize:(k+1)*azure.SectorSize], off+int64(k*azure.SectorSize)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(part, plain[k*azure.SectorSize:(k+1)*azure.SectorSize]) {
				t.Fatalf("sector %d decrypted alone differs", k)
			}
		}
	}
}

func TestSectorCipherTweak(t *testing.T) {
	c := newCipher(t, testKey(1))
	// The same plaintext in every sector, including all zeros.
	for _, fill := range []byte{0, 0xA5} {
		plain := bytes.Repeat([]byte{fill}, 16*azure.SectorSize)
		enc := make([]byte, len(plain))
		if err := c.Encrypt(enc, plain, 1<<30); err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for i := 0; i < len(enc); i += azure.SectorSize {
			s := string(enc[i : i+azure.SectorSize])
			if j, ok := seen[s]; ok {
				t.Fatalf("fill %#x: sectors %d and %d have the same ciphertext", fill, j, i/azure.SectorSize)
			}
			seen[s] = i / azure.SectorSize
			// Within a sector, no 16-byte block repeats either.
			blocks := map[string]bool{}
			for b := i; b < i+azure.SectorSize; b += 16 {
				if blocks[string(enc[b:b+16])] {
					t.Fatalf("fill %#x: a 16-byte block repeats in sector %d", fill, i/azure.SectorSize)
				}
				blocks[string(enc[b:b+16])] = true
			}
		}
	}
}

func TestSectorCipherHidesPlaintext(t *testing.T) {
	c := newCipher(t, testKey(3))
	rng := rand.New(rand.NewPCG(4, 4))
	// A volume image with random, text-like and zero sectors.
	var plain []byte
	for i := 0; i < 64; i++ {
		switch i % 3 {
		case 0:
			plain = append(plain, randomBytes(rng, azure.SectorSize)...)
		case 1:
			plain = append(plain, []byte(strings.Repeat("lifeboat sector text ", 200)[:azure.SectorSize])...)
		default:
			plain = append(plain, make([]byte, azure.SectorSize)...)
		}
	}
	enc := make([]byte, len(plain))
	if err := c.Encrypt(enc, plain, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(plain); i += azure.SectorSize {
		if bytes.Contains(enc, plain[i:i+azure.SectorSize]) {
			t.Fatalf("ciphertext contains plaintext sector %d", i/azure.SectorSize)
		}
	}
	if bytes.Contains(enc, []byte("lifeboat sector")) {
		t.Fatal("ciphertext contains plaintext text")
	}
}

func TestSectorCipherWrongKey(t *testing.T) {
	right, wrong := newCipher(t, testKey(5)), newCipher(t, testKey(6))
	if right.KeyCheckValue() == wrong.KeyCheckValue() {
		t.Fatalf("two keys share the key check value %s", right.KeyCheckValue())
	}
	if kcv := right.KeyCheckValue(); len(kcv) != 16 || strings.Contains(hex.EncodeToString(testKey(5)), kcv) {
		t.Fatalf("key check value %q: want 16 hex characters not taken from the key", kcv)
	}
	if again := newCipher(t, testKey(5)).KeyCheckValue(); again != right.KeyCheckValue() {
		t.Fatalf("key check value not stable: %s then %s", right.KeyCheckValue(), again)
	}
	if err := right.CheckKey(right.KeyCheckValue()); err != nil {
		t.Fatalf("CheckKey(own value) = %v", err)
	}
	if err := wrong.CheckKey(right.KeyCheckValue()); !errors.Is(err, azure.ErrWrongKey) {
		t.Fatalf("CheckKey(other key's value) = %v, want ErrWrongKey", err)
	}
	plain := randomBytes(rand.New(rand.NewPCG(7, 7)), 8*azure.SectorSize)
	enc := make([]byte, len(plain))
	dec := make([]byte, len(plain))
	if err := right.Encrypt(enc, plain, 4096); err != nil {
		t.Fatal(err)
	}
	if err := wrong.Decrypt(dec, enc, 4096); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(plain); i += azure.SectorSize {
		if bytes.Equal(dec[i:i+azure.SectorSize], plain[i:i+azure.SectorSize]) {
			t.Fatalf("wrong key decrypted sector %d", i/azure.SectorSize)
		}
	}
	// The right key at the wrong offset does not decrypt either.
	if err := right.Decrypt(dec, enc, 8192); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(dec[:azure.SectorSize], plain[:azure.SectorSize]) {
		t.Fatal("decrypting at another sector number gave the plaintext")
	}
}

func TestSectorCipherRefuses(t *testing.T) {
	half := testKey(8)[:32]
	for _, tc := range []struct {
		name string
		key  []byte
		want error
	}{
		{"empty", nil, azure.ErrKeySize},
		{"aes-128-xts", testKey(8)[:32], azure.ErrKeySize},
		{"too long", append(testKey(8), 0), azure.ErrKeySize},
		{"equal halves", append(append([]byte(nil), half...), half...), azure.ErrKeyWeak},
		{"zero", make([]byte, 64), azure.ErrKeyWeak},
	} {
		if _, err := azure.NewSectorCipher(tc.key); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}

	c := newCipher(t, testKey(9))
	buf := make([]byte, 3*azure.SectorSize)
	for _, tc := range []struct {
		name     string
		dst, src []byte
		off      int64
		want     error
	}{
		{"unaligned offset", buf[:azure.SectorSize], buf[:azure.SectorSize], 512, azure.ErrSectorAligned},
		{"unaligned length", buf[:azure.SectorSize+512], buf[:azure.SectorSize+512], 0, azure.ErrSectorAligned},
		{"page-sized", buf[:512], buf[:512], 0, azure.ErrSectorAligned},
		{"negative offset", buf[:azure.SectorSize], buf[:azure.SectorSize], -azure.SectorSize, azure.ErrSectorAligned},
		{"short destination", buf[:azure.SectorSize], make([]byte, 2*azure.SectorSize), 0, nil},
		{"overlap", buf[azure.SectorSize:], buf[:2*azure.SectorSize], 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, op := range []func([]byte, []byte, int64) error{c.Encrypt, c.Decrypt} {
				err := op(tc.dst, tc.src, tc.off)
				if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
			}
		})
	}
	if err := c.Encrypt(nil, nil, 0); err != nil {
		t.Fatalf("empty range: %v", err)
	}
}

func writeKeyFile(t *testing.T, content []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "replica.key")
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadKey(t *testing.T) {
	key := testKey(10)
	hexKey := hex.EncodeToString(key)
	for _, tc := range []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    error
	}{
		{"raw", key, 0o600, nil},
		{"hex", []byte(hexKey), 0o600, nil},
		{"hex with newline", []byte(hexKey + "\n"), 0o400, nil},
		{"upper-case hex", []byte(strings.ToUpper(hexKey)), 0o600, nil},
		{"group-readable", key, 0o640, azure.ErrKeyFilePerm},
		{"world-readable", []byte(hexKey), 0o604, azure.ErrKeyFilePerm},
		{"raw with newline", append(append([]byte(nil), key...), '\n'), 0o600, azure.ErrKeyFormat},
		{"short hex", []byte(hexKey[:64]), 0o600, azure.ErrKeySize},
		{"short raw", key[:32], 0o600, azure.ErrKeyFormat},
		{"empty", nil, 0o600, azure.ErrKeyFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := azure.LoadKey(writeKeyFile(t, tc.content, tc.mode))
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, key) {
				t.Fatalf("key = %x, want %x", got, key)
			}
		})
	}
	_, err := azure.LoadKey(writeKeyFile(t, key, 0o644))
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("permission error %q does not say what to do", err)
	}
	if _, err := azure.LoadKey(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestKeyFromEnv(t *testing.T) {
	key := testKey(11)
	t.Setenv("LIFEBOAT_TEST_KEY", hex.EncodeToString(key))
	got, err := azure.KeyFromEnv("LIFEBOAT_TEST_KEY")
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("KeyFromEnv = %x, %v; want %x", got, err, key)
	}
	if _, err := azure.KeyFromEnv("LIFEBOAT_TEST_KEY_UNSET"); !errors.Is(err, azure.ErrKeyMissing) {
		t.Errorf("unset: err = %v, want ErrKeyMissing", err)
	}
	t.Setenv("LIFEBOAT_TEST_KEY", string(key[:8])+strings.Repeat("x", 56))
	if _, err := azure.KeyFromEnv("LIFEBOAT_TEST_KEY"); !errors.Is(err, azure.ErrKeyFormat) {
		t.Errorf("raw bytes in the environment: err = %v, want ErrKeyFormat", err)
	}
	t.Setenv("LIFEBOAT_TEST_KEY", hex.EncodeToString(key[:32]))
	if _, err := azure.KeyFromEnv("LIFEBOAT_TEST_KEY"); !errors.Is(err, azure.ErrKeySize) {
		t.Errorf("32-byte key: err = %v, want ErrKeySize", err)
	}
}

func benchmarkCipher(b *testing.B, decrypt bool) {
	c := newCipher(b, testKey(12))
	src := randomBytes(rand.New(rand.NewPCG(13, 13)), 4<<20)
	dst := make([]byte, len(src))
	op := c.Encrypt
	if decrypt {
		op = c.Decrypt
	}
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := op(dst, src, int64(i%256)*int64(len(src))); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncrypt(b *testing.B) { benchmarkCipher(b, false) }
func BenchmarkDecrypt(b *testing.B) { benchmarkCipher(b, true) }

func FuzzParseKey(f *testing.F) {
	key := testKey(14)
	f.Add(key)
	f.Add([]byte(hex.EncodeToString(key) + "\n"))
	f.Add([]byte(hex.EncodeToString(key[:32])))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := azure.ParseKey(b)
		if err != nil {
			return
		}
		if len(k) != azure.XTSKeySize {
			t.Fatalf("accepted a key of %d bytes", len(k))
		}
		if len(b) != azure.XTSKeySize && !bytes.Equal(k, mustHex(t, bytes.TrimSpace(b))) {
			t.Fatalf("hex key %q parsed as %x", b, k)
		}
	})
}

func mustHex(t *testing.T, b []byte) []byte {
	t.Helper()
	k, err := hex.DecodeString(string(b))
	if err != nil {
		t.Fatalf("accepted non-hex %q: %v", b, err)
	}
	return k
}
