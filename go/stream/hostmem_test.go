package stream

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestBalloonReports(t *testing.T) {
	const none = "0000000000000000"
	cases := []struct {
		name    string
		devices [][2]string // device id, features
		want    bool
	}{
		{"no virtio devices", nil, false},
		{"a balloon that reports free pages", [][2]string{{"0x0001", "1100010110111011"}, {"0x0005", "0110010100000000"}}, true},
		{"a balloon that does not", [][2]string{{"0x0005", "0110000100000000"}}, false},
		{"bit 5 of another device", [][2]string{{"0x0002", "0010011001100100"}}, false},
		{"a balloon with a short feature string", [][2]string{{"0x0005", "011"}}, false},
		{"a balloon with no features file", [][2]string{{"0x0005", ""}}, false},
		{"no balloon among several", [][2]string{{"0x0001", none}, {"0x0004", "1111111111111111"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i, d := range tc.devices {
				dev := filepath.Join(dir, fmt.Sprintf("virtio%d", i))
				if err := os.Mkdir(dev, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dev, "device"), []byte(d[0]+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				if d[1] != "" {
					if err := os.WriteFile(filepath.Join(dev, "features"), []byte(d[1]+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			if got := balloonReports(dir); got != tc.want {
				t.Fatalf("balloonReports = %v, want %v", got, tc.want)
			}
		})
	}
}
