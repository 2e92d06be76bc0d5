// The tablet page's words: one table per language, and the language the
// page speaks (Korean unless the browser prefers English, or ?lang=en).
export const STRINGS = {
  ko: {
    signOut: "로그아웃", signInTitle: "태블릿 로그인", tokenLabel: "태블릿 토큰", connect: "연결",
    qrHint: "관리자 화면의 QR 코드를 카메라로 찍으면 토큰 입력 없이 바로 로그인됩니다.",
    soundTitle: "소리 켜기", soundText: "전화가 오면 알림음이 울리도록 화면을 한 번 눌러 주세요.",
    soundButton: "눌러서 소리 켜기",
    offlineTitle: "연결 끊김", offlineHint: "다시 연결하는 중입니다. 그동안 온 전화는 연결되면 '놓친 전화'에 표시됩니다.",
    offlineFor: (t) => "(" + t + " 전부터)",
    missedTitle: "놓친 전화", missedClear: "모두 확인", callsTitle: "오늘 들어온 전화",
    callsEmpty: "오늘 들어온 전화가 없습니다.", reservationsTitle: "오늘과 내일 예약",
    reservationsEmpty: "예약이 없습니다.", newReservation: "새 예약",
    customerNumber: "고객 전화번호", carNumber: "차량 번호", carNumberHint: "예: 12가3456", carModel: "차종",
    service: "서비스", serviceHint: "예: 손세차", time: "예약 시간", memo: "메모", save: "예약 저장", cancel: "취소",
    incomingCall: "전화가 왔습니다", acknowledge: "확인", reserve: "예약",
    status: { ringing: "벨 울림", answered: "통화 중", missed: "부재중", completed: "통화 종료" },
    state: { "signed-out": "로그아웃됨", connecting: "연결 중", connected: "연결됨", reconnecting: "다시 연결 중", refused: "토큰 거부됨" },
    refused: (why) => "토큰이 거부되었습니다: " + why,
    historyLoading: "고객 정보를 불러오는 중…", historyNone: "처음 전화한 고객입니다.",
    historyCalls: (n) => "이전 통화 " + n + "회", historyLast: (d) => "마지막 통화 " + d,
    historyReservation: (d, what) => "최근 예약 " + d + (what ? " · " + what : ""),
    historyFailed: "고객 정보를 불러오지 못했습니다.",
    takenBy: (by) => (by || "다른 태블릿") + "에서 응대 중",
    takenNotice: (num, by) => num + " 전화는 " + (by || "다른 태블릿") + "에서 응대했습니다.",
    acknowledged: "확인함", tomorrow: "내일", saved: (id) => "예약을 저장했습니다 (#" + id + ")",
    missedBadge: "놓친 전화", callBack: "다시 걸었음", calledBack: (by, t) => "다시 걸었음: " + (by || "다른 태블릿") + " " + t,
    followups: (n) => "놓친 전화 " + n + "건", filterMissed: "놓친 전화만", filterAll: "모두 보기", unknownError: "오류가 발생했습니다. 잠시 후 다시 시도해 주세요.",
    invalid: (field) => field + " 값을 확인해 주세요.",
    fields: { customerNumber: "고객 전화번호", reservedAt: "예약 시간", carNumber: "차량 번호", carModel: "차종", service: "서비스", memo: "메모", callId: "통화" },
    duration: (h, m, s) => (h ? h + "시간 " : "") + (h || m ? m + "분 " : "") + s + "초",
  },
  en: {
    signOut: "Sign out", signInTitle: "Tablet sign-in", tokenLabel: "Tablet token", connect: "Connect",
    qrHint: "Scan the QR code on the operator console to sign in without typing the token.",
    soundTitle: "Turn on sound", soundText: "Tap once so the chime can sound when a call comes in.",
    soundButton: "Tap to turn on sound",
    offlineTitle: "Connection lost", offlineHint: "Reconnecting. Calls that come in meanwhile show as missed calls once back.",
    offlineFor: (t) => "(for " + t + ")",
    missedTitle: "Missed calls", missedClear: "Mark all seen", callsTitle: "Today's calls",
    callsEmpty: "No calls today yet.", reservationsTitle: "Reservations today and tomorrow",
    reservationsEmpty: "No reservations.", newReservation: "New reservation",
    customerNumber: "Customer number", carNumber: "Car number", carNumberHint: "e.g. 12가3456", carModel: "Car model",
    service: "Service", serviceHint: "e.g. hand wash", time: "Time", memo: "Memo", save: "Save reservation", cancel: "Cancel",
    incomingCall: "Incoming call", acknowledge: "OK", reserve: "Reserve",
    status: { ringing: "ringing", answered: "on the phone", missed: "missed", completed: "ended" },
    state: { "signed-out": "signed out", connecting: "connecting", connected: "connected", reconnecting: "reconnecting", refused: "token refused" },
    refused: (why) => "The token was refused: " + why,
    historyLoading: "Looking up the caller…", historyNone: "First call from this number.",
    historyCalls: (n) => n + (n === 1 ? " earlier call" : " earlier calls"), historyLast: (d) => "last " + d,
    historyReservation: (d, what) => "last reservation " + d + (what ? " · " + what : ""),
    historyFailed: "Could not look up the caller.",
    takenBy: (by) => "taken by " + (by || "another tablet"),
    takenNotice: (num, by) => "The call from " + num + " was taken by " + (by || "another tablet") + ".",
    acknowledged: "seen", tomorrow: "tomorrow", saved: (id) => "Saved reservation #" + id,
    missedBadge: "missed", callBack: "Called back", calledBack: (by, t) => "called back by " + (by || "another tablet") + " " + t,
    followups: (n) => n + " missed " + (n === 1 ? "call" : "calls"), filterMissed: "Missed only", filterAll: "Show all", unknownError: "Something went wrong; please try again.",
    invalid: (field) => "Please check the " + field.toLowerCase() + ".",
    fields: { customerNumber: "Customer number", reservedAt: "Time", carNumber: "Car number", carModel: "Car model", service: "Service", memo: "Memo", callId: "Call" },
    duration: (h, m, s) => (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s",
  },
};

// Korean unless the browser prefers English (or ?lang=en).
export function pickLanguage() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked && STRINGS[asked]) return asked;
  for (const l of navigator.languages || [navigator.language || ""]) {
    const base = String(l).toLowerCase().split("-")[0];
    if (base === "ko" || base === "en") return base;
  }
  return "ko";
}

export const LANG = pickLanguage();
export const T = STRINGS[LANG];
export const LOCALE = LANG === "ko" ? "ko-KR" : "en-US";

// Fills the page's marked elements (`data-i18n`, `data-i18n-placeholder`)
// with this language's words.
export function translate(doc) {
  doc.documentElement.lang = LANG;
  for (const el of doc.querySelectorAll("[data-i18n]")) el.textContent = T[el.dataset.i18n];
  for (const el of doc.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = T[el.dataset.i18nPlaceholder];
}
