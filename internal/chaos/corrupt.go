package chaos

import (
	"bytes"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Flip is a bit flipped in a stopped node's file.
type Flip struct {
	File   string
	Offset int64
	Bit    uint8
	// Key, Original and Corrupted are set when the flipped bit is inside
	// a ledger value: the value as written and as it now reads in the file.
	Key, Original, Corrupted string
}

func (f *Flip) String() string {
	s := fmt.Sprintf("bit %d of byte %d of %s", f.Bit, f.Offset, f.File)
	if f.Key != "" {
		s += fmt.Sprintf(" (inside the value of %s: %q -> %q)", f.Key, f.Original, f.Corrupted)
	}
	return s
}

// StoreFiles lists the files under dir whose names end in one of the
// suffixes, sorted, with their sizes.
func StoreFiles(dir string, suffixes ...string) (map[string]int64, error) {
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		for _, s := range suffixes {
			if strings.HasSuffix(p, s) {
				info, err := d.Info()
				if err != nil {
					return err
				}
				out[p] = info.Size()
			}
		}
		return nil
	})
	return out, err
}

// FlipValueBit looks for ledger values in files and flips one bit in the
// random part of one of them (chosen by rng): a value a node would serve
// if it trusted its file. It returns nil and no error if no file holds a
// ledger value in clear (compressed or encoded differently).
func FlipValueBit(rng *rand.Rand, files []string) (*Flip, error) {
	type hit struct {
		file string
		off  int // of the value's first byte
		n    int // value length
	}
	var hits []hit
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for i := 0; ; {
			j := bytes.Index(b[i:], []byte(LedgerValuePrefix))
			if j < 0 {
				break
			}
			start := i + j
			if n := ledgerValueLen(b[start:]); n > 0 {
				hits = append(hits, hit{f, start, n})
			}
			i = start + 1
		}
	}
	if len(hits) == 0 {
		return nil, nil
	}
	h := hits[rng.IntN(len(hits))]
	b, err := os.ReadFile(h.file)
	if err != nil {
		return nil, err
	}
	orig := string(b[h.off : h.off+h.n])
	// Flip a bit of one of the 32 hex digits at the end.
	pos := h.off + h.n - 1 - rng.IntN(32)
	fl := &Flip{File: h.file, Offset: int64(pos), Bit: 0, Key: KeyOfValue(orig), Original: orig}
	if err := flipAt(h.file, fl.Offset, fl.Bit); err != nil {
		return nil, err
	}
	corrupted := []byte(orig)
	corrupted[pos-h.off] ^= 1 << fl.Bit
	fl.Corrupted = string(corrupted)
	return fl, nil
}

// ledgerValueLen returns the length of the ledger value at the start of b
// ("ledger-value:KEY:SEQ:" and 32 hex digits), or 0.
func ledgerValueLen(b []byte) int {
	i := len(LedgerValuePrefix)
	colons := 0
	for i < len(b) && i < 256 && colons < 2 {
		c := b[i]
		if c == ':' {
			colons++
		} else if c < 0x21 || c > 0x7e {
			return 0
		}
		i++
	}
	if colons < 2 || i+32 > len(b) {
		return 0
	}
	for _, c := range b[i : i+32] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return 0
		}
	}
	return i + 32
}

// FlipRandomBit flips a random bit in the middle 80% of file.
func FlipRandomBit(rng *rand.Rand, file string) (*Flip, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if st.Size() < 16 {
		return nil, fmt.Errorf("%s has only %d bytes", file, st.Size())
	}
	lo := st.Size() / 10
	off := lo + rng.Int64N(st.Size()-2*lo)
	fl := &Flip{File: file, Offset: off, Bit: uint8(rng.IntN(8))}
	return fl, flipAt(file, off, fl.Bit)
}

func flipAt(file string, off int64, bit uint8) error {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return err
	}
	b[0] ^= 1 << bit
	if _, err := f.WriteAt(b[:], off); err != nil {
		return err
	}
	return f.Sync()
}
