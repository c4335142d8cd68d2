#!/usr/bin/env bash
# Regenerates the bundled voice prompts (prompts/<language>/<name>.wav) with
# espeak-ng and sox, so the repository never holds recordings nobody can
# reproduce. Output is 16 kHz mono 16-bit PCM: deliberately not 8 kHz, so the
# daemon's load-time resampler is exercised by the default prompt set.
#
# Usage: prompts/generate.sh            (needs: apt-get install espeak-ng sox)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

for tool in espeak-ng sox; do
    if ! command -v "$tool" >/dev/null; then
        echo "generate.sh: $tool not found; install it with: apt-get install -y espeak-ng sox" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# espeak-ng voice per language directory. en-us rather than plain "en"
# (British) because the demo targets a US-style IVR.
declare -A VOICE=([en]=en-us [de]=de)

# Speech rate in words per minute: a little slower than espeak's default
# 175, which is hard to follow over a narrowband phone line.
RATE=155

# speak VOICE TEXT OUT: synthesise TEXT into OUT as raw espeak output.
speak() {
    # -b 1: the text is UTF-8 (umlauts in the German prompts).
    espeak-ng -b 1 -v "$1" -s "$RATE" -w "$3" "$2"
}

# finish IN OUT: convert to 16 kHz mono 16-bit, trim leading and trailing
# silence (keeps files small and prompts snappy), normalise to -3 dBFS peak
# (headroom for the G.711 companders), then pad 50 ms each side so that
# concatenated prompts such as "you entered" + digits stay distinct and the
# first syllable is not clipped when RTP starts.
finish() {
    # -R: repeatable dither, so reruns give byte-identical files.
    sox -R -V1 "$1" -r 16000 -c 1 -b 16 "$2" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse \
        norm -3 pad 0.05 0.05
}

# say LANG NAME TEXT
say() {
    local lang=$1 name=$2 text=$3
    mkdir -p "$lang"
    speak "${VOICE[$lang]}" "$text" "$tmp/raw.wav"
    finish "$tmp/raw.wav" "$lang/$name.wav"
}

# Both languages: NAME "English text" "German text".
both() {
    say en "$1" "$2"
    say de "$1" "$3"
}

both welcome \
    "Welcome. This line verifies callers by a one-time PIN." \
    "Willkommen. Diese Leitung prüft Anrufer mit einer Einmal-PIN."
both demo-welcome \
    "Welcome to the i v r d demo." \
    "Willkommen bei der i v r d Demo."
both enter-digits \
    "Please enter some digits, then press the hash key." \
    "Bitte geben Sie einige Ziffern ein und drücken Sie dann die Raute-Taste."
both you-entered \
    "You entered" \
    "Sie haben eingegeben"
both no-input \
    "Sorry, I did not hear any input." \
    "Entschuldigung, ich habe keine Eingabe gehört."
both invalid \
    "Sorry, that is not valid." \
    "Entschuldigung, das ist ungültig."
both goodbye \
    "Goodbye." \
    "Auf Wiederhören."
both enter-customer-id \
    "Please enter your six digit customer number." \
    "Bitte geben Sie Ihre sechsstellige Kundennummer ein."
both sending-pin \
    "Thank you. We are sending a PIN to your mobile phone. Please wait." \
    "Danke. Wir senden eine PIN an Ihr Mobiltelefon. Bitte warten Sie."
both enter-pin \
    "Please enter the PIN from the text message." \
    "Bitte geben Sie die PIN aus der Textnachricht ein."
both wrong-pin \
    "That PIN is not correct." \
    "Diese PIN ist nicht korrekt."
both verified \
    "Thank you, you are verified. Connecting you to an agent." \
    "Danke, Sie sind verifiziert. Wir verbinden Sie mit einem Mitarbeiter."
both fallback \
    "Please hold, we are connecting you to an agent." \
    "Bitte bleiben Sie am Apparat, wir verbinden Sie mit einem Mitarbeiter."
both sms-failed \
    "Sorry, we could not send the text message." \
    "Entschuldigung, wir konnten die Textnachricht nicht senden."
# The PIN read out by a call to the mobile on file (send_pin with channel = "voice").
both calling-pin \
    "Thank you. We are calling your mobile phone now to read you a PIN. Please answer it." \
    "Danke. Wir rufen jetzt Ihr Mobiltelefon an und lesen Ihnen eine PIN vor. Bitte nehmen Sie den Anruf an."
both enter-pin-call \
    "Please enter the PIN we read to you." \
    "Bitte geben Sie die PIN ein, die wir Ihnen vorgelesen haben."
both call-failed \
    "Sorry, we could not reach your mobile phone." \
    "Entschuldigung, wir konnten Ihr Mobiltelefon nicht erreichen."

# The code read out on a voice verification call (src/verify/voice.rs).
both voice-press-key \
    "Press any key to hear your verification code." \
    "Drücken Sie eine beliebige Taste, um Ihren Bestätigungscode zu hören."
both voice-code-is \
    "Your verification code is" \
    "Ihr Bestätigungscode lautet"
both voice-press-1 \
    "To hear it again, press 1." \
    "Um ihn noch einmal zu hören, drücken Sie die 1."

# Spoken key names, used to read back entered digits.
en_keys=(zero one two three four five six seven eight nine)
de_keys=(null eins zwei drei vier fünf sechs sieben acht neun)
for d in 0 1 2 3 4 5 6 7 8 9; do
    both "digit-$d" "${en_keys[$d]}" "${de_keys[$d]}"
done
both star "star" "Stern"
both hash "hash" "Raute"

# Number words for the dialplan's say_number step (src/dialplan/say.rs composes
# 0..=999999 from them): 0-19, the tens, hundred, thousand. German puts the unit
# first and joins with "und" (vier-und-zwanzig), and says "ein", not "eins",
# inside compounds (ein-und-zwanzig, ein-hundert): hence num-and and num-one.
# Both languages get every name so the directories stay alike.
en_nums=(zero one two three four five six seven eight nine ten eleven twelve
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen)
de_nums=(null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf
    dreizehn vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn)
for n in $(seq 0 19); do
    both "num-$n" "${en_nums[$n]}" "${de_nums[$n]}"
done
en_tens=(twenty thirty forty fifty sixty seventy eighty ninety)
de_tens=(zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig)
for t in $(seq 2 9); do
    both "num-${t}0" "${en_tens[$((t - 2))]}" "${de_tens[$((t - 2))]}"
done
both num-hundred "hundred" "hundert"
both num-thousand "thousand" "tausend"
both num-and "and" "und"
both num-one "one" "ein"

# The language menu is played before a language is chosen, so it is one
# bilingual file, identical in every language directory. Each half is
# spoken by its own voice (a German voice reading English sounds wrong),
# joined with a short pause.
speak en-us "For English, press 1." "$tmp/menu-en.wav"
speak de "Für Deutsch, drücken Sie 2." "$tmp/menu-de.wav"
sox -R -V1 -n -r 22050 -c 1 -b 16 "$tmp/gap.wav" trim 0 0.4
sox -R -V1 "$tmp/menu-en.wav" "$tmp/gap.wav" "$tmp/menu-de.wav" "$tmp/menu.wav"
finish "$tmp/menu.wav" en/language-menu.wav
cp en/language-menu.wav de/language-menu.wav

# The wait tone: played (repeatedly) while ivrd waits on something slower than the
# prompt that announced it (an SMS provider), so the caller never hears dead air.
# A short soft 440 Hz beep followed by silence; no speech, so one file serves all.
sox -R -V1 -n -r 16000 -c 1 -b 16 "$tmp/beep.wav" synth 0.2 sine 440 fade 0.02 0.2 0.05 vol 0.25
sox -R -V1 "$tmp/beep.wav" en/wait-tone.wav pad 0 1.3
cp en/wait-tone.wav de/wait-tone.wav

echo "generated $(find en de -name '*.wav' | wc -l) prompts in $(pwd)"
